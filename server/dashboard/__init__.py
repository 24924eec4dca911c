"""The browser dashboard ``aegle serve`` mounts at ``/dashboard``: login with an API token, the ward view (live
vitals by Server-Sent Events), the operator view (component health). See docs/dashboard.md."""

from server.dashboard.app import RootRedirect, create_dashboard

__all__ = ["RootRedirect", "create_dashboard"]
