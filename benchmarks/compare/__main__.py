from benchmarks.compare import main

main()
