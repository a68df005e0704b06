from natkit.cli import main

raise SystemExit(main())
