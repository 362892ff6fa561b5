from piccolo_embed.cli import main

raise SystemExit(main())
