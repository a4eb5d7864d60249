# The cnop image: every service in one package; the command picks the role.
# The web app's npm assets (htmx, lightweight-charts) are installed in a Node stage from the lock file.
FROM node:20-slim AS web-assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --omit=dev --no-audit --no-fund

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c requirements.lock . && useradd --create-home cnop
COPY --from=web-assets /assets/node_modules /app/node_modules
USER cnop
ENV CNOP_STORE=dynamodb CNOP_WEB_ASSETS_DIR=/app/node_modules
EXPOSE 8080
CMD ["sh", "-c", "cnop db init && cnop serve --host 0.0.0.0 --port 8080"]
