#!/usr/bin/env bash
# api-smoke.sh: speaks HTTP to a running deltatune-server and checks every
# route's status codes (no worker needed: the worker's writes are simulated
# nowhere; jobs stay queued). Usage:
#   tests/integration/api-smoke.sh URL KEY OTHER_OWNER_KEY DATASET.jsonl
set -uo pipefail
U=$1; KEY=$2; KEY2=$3; DATA=$4
H="Authorization: Bearer $KEY"; H2="Authorization: Bearer $KEY2"
fail=0; n=0
check() { # expected-status description curl-args...
  local want=$1 what=$2; shift 2
  local got; got=$(curl -s -o /tmp/smoke.$$ -w '%{http_code}' "$@")
  n=$((n+1))
  if [ "$got" = "$want" ]; then echo "ok   $got $what"; else echo "FAIL $got (want $want) $what: $(head -c 300 /tmp/smoke.$$)"; fail=$((fail+1)); fi
}
jget() { python3 -c "import json,sys; print(json.load(open('/tmp/smoke.$$'))$1)"; }

check 200 healthz $U/healthz
check 200 readyz $U/readyz
check 200 metrics $U/metrics
check 200 openapi $U/v1/openapi.json
check 401 "no key" $U/v1/files
check 401 "bad key" -H "Authorization: Bearer dt-AAAAAAAA-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" $U/v1/files
check 404 "unknown route" -H "$H" $U/v1/nothing
check 405 "wrong method" -H "$H" -X PUT $U/v1/files

check 200 "upload" -H "$H" -F purpose=fine-tune -F "file=@$DATA" $U/v1/files
FID=$(jget '["id"]'); [ "$(jget '["status"]')" = processed ] || { echo "FAIL upload not processed"; fail=$((fail+1)); }
printf '{"text":"ok"}\nnot json\n' > /tmp/smoke-bad.$$.jsonl
check 200 "upload bad jsonl (stored with status error)" -H "$H" -F purpose=fine-tune -F "file=@/tmp/smoke-bad.$$.jsonl" $U/v1/files
BAD=$(jget '["id"]')
check 400 "upload without purpose" -H "$H" -F "file=@$DATA" $U/v1/files
check 400 "upload not multipart" -H "$H" -H 'Content-Type: application/json' -d '{}' $U/v1/files
check 200 "files list" -H "$H" "$U/v1/files?limit=1&order=asc"
check 200 "file get" -H "$H" $U/v1/files/$FID
check 200 "file content" -H "$H" $U/v1/files/$FID/content
cmp -s /tmp/smoke.$$ "$DATA" || { echo "FAIL content differs"; fail=$((fail+1)); }
check 404 "file other owner" -H "$H2" $U/v1/files/$FID

B="{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"$FID\",\"suffix\":\"smoke\",\"metadata\":{\"run\":\"smoke\"},\"method\":{\"type\":\"delta_lora\",\"delta_lora\":{\"hyperparameters\":{\"rank\":4,\"n_epochs\":1}}}}"
check 200 "job create" -H "$H" -H "Idempotency-Key: smoke-$$" -d "$B" $U/v1/fine_tuning/jobs
J=$(jget '["id"]')
check 200 "job create replay" -H "$H" -H "Idempotency-Key: smoke-$$" -d "$B" $U/v1/fine_tuning/jobs
[ "$(jget '["id"]')" = "$J" ] || { echo "FAIL replay gave another job"; fail=$((fail+1)); }
check 422 "idempotency key reuse" -H "$H" -H "Idempotency-Key: smoke-$$" -d "{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"$FID\"}" $U/v1/fine_tuning/jobs
check 400 "malformed json" -H "$H" -d '{x' $U/v1/fine_tuning/jobs
check 400 "unknown field" -H "$H" -d "{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"$FID\",\"x\":1}" $U/v1/fine_tuning/jobs
check 400 "rank out of range" -H "$H" -d "{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"$FID\",\"method\":{\"type\":\"lora\",\"lora\":{\"hyperparameters\":{\"rank\":999}}}}" $U/v1/fine_tuning/jobs
check 400 "unknown model" -H "$H" -d "{\"model\":\"nope\",\"training_file\":\"$FID\"}" $U/v1/fine_tuning/jobs
check 400 "unknown file" -H "$H" -d "{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"file-x\"}" $U/v1/fine_tuning/jobs
check 400 "file with errors" -H "$H" -d "{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"$BAD\"}" $U/v1/fine_tuning/jobs
check 400 "other owner's file" -H "$H2" -d "{\"model\":\"SmolLM2-135M-Instruct\",\"training_file\":\"$FID\"}" $U/v1/fine_tuning/jobs
head -c 1100000 /dev/zero | tr '\0' ' ' > /tmp/smoke-big.$$
check 413 "oversized body" -H "$H" --data-binary @/tmp/smoke-big.$$ $U/v1/fine_tuning/jobs
check 200 "jobs list" -H "$H" "$U/v1/fine_tuning/jobs?limit=1"
check 200 "jobs list metadata filter" -H "$H" "$U/v1/fine_tuning/jobs?metadata%5Brun%5D=smoke"
check 200 "job get" -H "$H" $U/v1/fine_tuning/jobs/$J
check 404 "job other owner" -H "$H2" $U/v1/fine_tuning/jobs/$J
check 200 "events" -H "$H" "$U/v1/fine_tuning/jobs/$J/events?limit=5"
check 200 "checkpoints" -H "$H" $U/v1/fine_tuning/jobs/$J/checkpoints
check 404 "events other owner" -H "$H2" $U/v1/fine_tuning/jobs/$J/events
check 409 "delete a file a queued job uses" -H "$H" -X DELETE $U/v1/files/$FID
check 200 "pause" -H "$H" -X POST $U/v1/fine_tuning/jobs/$J/pause
check 409 "pause again" -H "$H" -X POST $U/v1/fine_tuning/jobs/$J/pause
check 200 "resume" -H "$H" -X POST $U/v1/fine_tuning/jobs/$J/resume
check 404 "cancel other owner" -H "$H2" -X POST $U/v1/fine_tuning/jobs/$J/cancel
check 200 "cancel" -H "$H" -X POST $U/v1/fine_tuning/jobs/$J/cancel
check 409 "cancel again" -H "$H" -X POST $U/v1/fine_tuning/jobs/$J/cancel
check 200 "file delete" -H "$H" -X DELETE $U/v1/files/$BAD
check 404 "file deleted" -H "$H" $U/v1/files/$BAD
check 200 "models list" -H "$H" $U/v1/models
check 200 "model get" -H "$H" $U/v1/models/SmolLM2-135M-Instruct
check 200 "model files" -H "$H" $U/v1/models/SmolLM2-135M-Instruct/files
check 206 "model file range" -H "$H" -H 'Range: bytes=0-3' $U/v1/models/SmolLM2-135M-Instruct/files/SmolLM2-135M-Instruct.Q4_1.gguf
[ "$(head -c 4 /tmp/smoke.$$)" = GGUF ] || { echo "FAIL range bytes"; fail=$((fail+1)); }
check 416 "model file bad range" -H "$H" -H 'Range: bytes=999999999-' $U/v1/models/SmolLM2-135M-Instruct/files/SmolLM2-135M-Instruct.Q4_1.gguf
check 404 "model file unknown" -H "$H" $U/v1/models/SmolLM2-135M-Instruct/files/etc-passwd
check 403 "delete base model" -H "$H" -X DELETE $U/v1/models/SmolLM2-135M-Instruct
check 404 "unknown model" -H "$H" $U/v1/models/nope
rm -f /tmp/smoke.$$ /tmp/smoke-bad.$$.jsonl /tmp/smoke-big.$$
echo "$n checks, $fail failed"
[ $fail -eq 0 ]
