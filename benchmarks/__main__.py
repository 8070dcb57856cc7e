"""`python -m benchmarks`: the benchmark suite (see benchmarks/suite.py or --help)."""

from benchmarks.suite import main

raise SystemExit(main())
