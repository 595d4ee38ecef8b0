from securekv.cli.main import main

main()
