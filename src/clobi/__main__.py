from clobi.cli.main import main

raise SystemExit(main())
