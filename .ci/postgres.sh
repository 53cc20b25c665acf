#!/usr/bin/env bash
# Install (Debian apt), start and prepare a PostgreSQL server for the store/API tests, then print the URL
# the tests use (GPUPOOL_TEST_POSTGRES_URL): a `gpupool` role that may create throw-away databases.
# Idempotent; needs root. Usage: export GPUPOOL_TEST_POSTGRES_URL="$(.ci/postgres.sh)"
set -euo pipefail

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

cluster=$(pg_lsclusters --no-header | head -n 1)
if [ -z "$cluster" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    pg_createcluster "$version" main >&2
    cluster=$(pg_lsclusters --no-header | head -n 1)
fi
read -r version name port status _ <<<"$cluster"
if [ "$status" != "online" ]; then
    pg_ctlcluster "$version" "$name" start >&2
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$port" >&2

su postgres -c "psql -q -p $port -v ON_ERROR_STOP=1" >&2 <<'SQL'
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gpupool') THEN
        CREATE ROLE gpupool;
    END IF;
END
$$;
ALTER ROLE gpupool LOGIN CREATEDB PASSWORD 'gpupool';
SQL
echo "postgresql+psycopg://gpupool:gpupool@127.0.0.1:${port}/postgres"
