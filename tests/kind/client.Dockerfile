# The end-to-end client check (tests/e2e/client_check.py with the real `openai` package), as an
# image for the in-cluster Job of tests/kind/run.sh. Build from the repository root.
FROM python:3.12-slim
WORKDIR /app
COPY tests/python/requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt
COPY tests/e2e/client_check.py /app/client_check.py
USER 65532:65532
ENTRYPOINT ["python", "/app/client_check.py"]
