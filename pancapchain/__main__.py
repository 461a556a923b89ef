import sys

from pancapchain.cli import main

sys.exit(main())
