#!/usr/bin/env bash
# Week 10's curl examples (docs/week10.md), run by `make week10` against a server on 127.0.0.1:8000
# (`make serve`). A test checks that every command below appears verbatim on that page.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- a text"
curl -s http://127.0.0.1:8000/v1/moderations -H "Content-Type: application/json" -d '{"input": "free money at www.example.com"}'
echo; echo "--- an image and its text, as multipart"
curl -s http://127.0.0.1:8000/v1/moderations -F image=@outputs/week10/gallery/test_00001.png -F text="a small green cross in the top right"
echo; echo "--- an image as an OpenAI-style data URL"
curl -s http://127.0.0.1:8000/v1/moderations -H "Content-Type: application/json" -d "{\"input\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,$(base64 -w0 outputs/week10/gallery/test_00002.png)\"}}]}"
echo; echo "--- a caption"
curl -s http://127.0.0.1:8000/v1/captions -F image=@outputs/week10/gallery/test_00003.png
echo; echo "--- a bad input gets a 4xx and says why"
curl -s -w " (HTTP %{http_code})" http://127.0.0.1:8000/v1/moderations -H "Content-Type: application/json" -d '{"input": 42}'
echo; echo "--- readiness and metrics"
curl -s http://127.0.0.1:8000/readyz
echo
curl -s http://127.0.0.1:8000/metrics | grep -E "^moderation_(batch_size_count|cache_total)"
