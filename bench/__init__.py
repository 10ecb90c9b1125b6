"""Load and ceiling measurements: the service under wrk against PostgreSQL's own ceiling (pgbench
running the service's own SQL), on one fresh database, in the same run. See bench/README.md."""
