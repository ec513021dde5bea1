from kshot.cli import main

main()
