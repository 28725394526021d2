#!/bin/sh
# The sample sources of the compose stack, created when the data volume is new: for each domain
# a login role rv_<domain> that owns that domain's two databases and can connect to nothing
# else, <domain>_accounts (personal data, 500 customers) and <domain>_catalog (metadata,
# 50 plans). The same shape as regionvault's embedded stack (regionvault/devstack/sample.py).
set -eu

run_psql() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"
}

for domain in us eu au; do
    role="rv_$domain"
    password="$(cat "/run/secrets/$domain-pg-password")"
    run_psql --dbname postgres -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
    for source in accounts catalog; do
        run_psql --dbname postgres -v db="${domain}_$source" -v role="$role" <<'SQL'
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
    done

    run_psql --dbname "${domain}_accounts" -v role="$role" -v domain="$domain" <<'SQL'
SET ROLE :"role";
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL, name text,
                        created timestamptz NOT NULL DEFAULT now());
INSERT INTO customers (email, name)
    SELECT 'user' || i || '@example.' || :'domain', 'Customer ' || i
    FROM generate_series(1, 500) AS i;
SQL

    run_psql --dbname "${domain}_catalog" -v role="$role" -v domain="$domain" <<'SQL'
SET ROLE :"role";
CREATE TABLE plans (id serial PRIMARY KEY, code text UNIQUE NOT NULL, seats int NOT NULL);
INSERT INTO plans (code, seats)
    SELECT 'plan-' || :'domain' || '-' || i, i * 5 FROM generate_series(1, 50) AS i;
SQL
done
