"""`python -m dacdr` runs the command line."""

from dacdr.cli import main

main()
