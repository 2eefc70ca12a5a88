from camlabel.cli.main import main

main()
