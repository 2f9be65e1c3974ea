#!/usr/bin/env bash
# A local PostgreSQL for the tests: installed from Debian's packages when
# missing, started when down, with a password for `postgres` (Debian's
# pg_hba asks for one on 127.0.0.1) and a database `test`. Prints the URL
# the tests read from CREDITS_TEST_POSTGRES_URL.
set -euo pipefail
password=${CREDITS_TEST_POSTGRES_PASSWORD:-credits-test}
if ! command -v pg_ctlcluster > /dev/null || [ -z "$(ls /etc/postgresql 2> /dev/null)" ]; then
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do
        pg_isready -h 127.0.0.1 -p 5432 -q && break
        sleep 0.5
    done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL $version did not start" >&2; exit 1; }
as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -c "$(printf '%q ' "$@")"; fi; }
as_postgres psql -q -v ON_ERROR_STOP=1 -c "ALTER USER postgres PASSWORD '$password'" > /dev/null
if ! as_postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    as_postgres createdb test
fi
echo "postgres://postgres:$password@127.0.0.1:5432/test"
