#!/bin/sh
# Initialises a new Couchbase Server node for ordermail: data, index and query
# services, memory quotas, the administrator. Safe to run again: an
# initialised cluster is left as it is. Buckets, collections and indexes are
# `ordermail setup`'s work.
set -eu

host=${CB_HOST:-localhost}
user=${CB_USERNAME:-Administrator}
pass=${CB_PASSWORD:-password}

tries=0
until curl -fs "http://$host:8091/pools" >/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 90 ]; then
    echo "couchbase-init: no answer from http://$host:8091 after 3 minutes" >&2
    exit 1
  fi
  sleep 2
done

if curl -fs -u "$user:$pass" "http://$host:8091/pools/default" >/dev/null; then
  echo "couchbase-init: cluster on $host is already initialised"
  exit 0
fi

couchbase-cli cluster-init -c "$host:8091" \
  --cluster-username "$user" --cluster-password "$pass" \
  --services data,index,query \
  --cluster-ramsize 1024 --cluster-index-ramsize 256 \
  --index-storage-setting default
echo "couchbase-init: cluster on $host initialised"
