#!/bin/sh
# What a consumer ordered After=qcapsd.service finds at its start: one
# look, no retries. Writes /run/qcapsd-consumer.result.
api=http://127.0.0.1:9733
probes() {
  curl -s "$api/metrics" | awk '$1 ~ /^qcapsd_probes_total[{ ]/ {s += $2} END {print s + 0}'
}
before=$(probes)
readyz=$(curl -s -o /dev/null -w '%{http_code}' "$api/readyz")
doc=$(curl -s -o /run/qcapsd-consumer.doc -w '%{http_code}' "$api/v1/emulators/qemu-system-x86_64")
qcapsd query --socket /run/qcapsd/qcapsd.sock qemu-system-x86_64 machines > /dev/null
query=$?
after=$(probes)
echo "readyz=$readyz doc=$doc query=$query execs=$((after - before))" > /run/qcapsd-consumer.result
