from fileserver.cli import main

main()
