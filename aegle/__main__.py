from aegle.cli import main

raise SystemExit(main())
