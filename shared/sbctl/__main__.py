from shared.sbctl.cli import main

main()
