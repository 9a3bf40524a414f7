import sys

from dataplane.nic.cli import main

sys.exit(main())
