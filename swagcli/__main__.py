from swagcli.cli import main

main()
