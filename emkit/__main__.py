from emkit.cli import main

main()
