from joulebench.cli.main import main

main()
