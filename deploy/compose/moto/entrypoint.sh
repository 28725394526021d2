#!/bin/sh
# Start moto's server, create the stack's buckets in it, and stay with the server.
set -eu
moto_server -H 0.0.0.0 -p 5000 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT
python /opt/regionvault-compose/s3_buckets.py create
wait "$server"
