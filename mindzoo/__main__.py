"""`python -m mindzoo` is `braindecode-cli`."""

from mindzoo.cli.app import main

main()
