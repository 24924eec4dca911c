"""The API's route families; each module exposes ``router``."""
