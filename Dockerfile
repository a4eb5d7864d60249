# The cnop image: every service in one package; the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c requirements.lock . && useradd --create-home cnop
USER cnop
ENV CNOP_STORE=dynamodb
EXPOSE 8080
CMD ["sh", "-c", "cnop db init && cnop serve --host 0.0.0.0 --port 8080"]
