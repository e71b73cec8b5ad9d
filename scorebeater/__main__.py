from scorebeater.cli import main

raise SystemExit(main())
