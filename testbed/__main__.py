from testbed.app.main import main

main()
