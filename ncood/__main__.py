"""`python -m ncood ...` == `ncood ...`."""
import sys

from ncood.cli import main

sys.exit(main())
