#!/bin/sh
# Creates the secrets of the docker-compose stack, once, as files in deploy/compose/secrets/
# (ignored by git): a key per domain, PostgreSQL passwords, one DSN per sample source and
# Flower's basic auth. A file that exists is kept, so running this again changes nothing.
#
# The directory is private (0700) and the files inside it world-readable (0644): Compose
# bind-mounts file secrets with their host permissions, and the containers read them as their
# own users (regionvault runs as uid 10001, PostgreSQL as uid 999).
set -eu

dir="$(cd "$(dirname "$0")" && pwd)/secrets"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

# $1 random bytes, base64 (a domain key is 32 bytes)
random_base64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
# $1 random letters and digits (safe inside a DSN)
random_token() { LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1"; }

write() {
    if [ ! -s "$dir/$1" ]; then
        printf '%s\n' "$2" >"$dir/$1"
        chmod 644 "$dir/$1"
        echo "created secrets/$1"
    fi
}

write postgres-password "$(random_token 32)"
for domain in us eu au; do
    write "$domain.key" "$(random_base64 32)"
    write "$domain-pg-password" "$(random_token 32)"
    password="$(cat "$dir/$domain-pg-password")"
    for source in accounts catalog; do
        write "$domain-$source.dsn" \
            "postgresql://rv_$domain:$password@postgres:5432/${domain}_$source"
    done
done
write flower.env "REGIONVAULT_FLOWER_BASIC_AUTH=operator:$(random_token 24)"
echo "secrets are in $dir (Flower's login: see flower.env)"
