# kubetunnel: one image for the server, the agent and the rest of the CLI.
# docker-compose.yml runs the demo with it; deploy/ runs it in Kubernetes.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.base.json ./
COPY packages ./packages
COPY bench ./bench
COPY examples ./examples
# The lock file as committed (npm ci refuses one out of step with package.json),
# then only the runtime dependencies kept.
RUN npm ci --no-audit --no-fund && npm run build && npm prune --omit=dev --no-audit --no-fund

# Distroless: node and nothing else (no shell, no package manager).
FROM gcr.io/distroless/nodejs20-debian12:nonroot
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/packages ./packages
COPY --from=build /src/package.json ./package.json
# docker-compose.yml's init service (run with the node above).
COPY deploy/compose/init.mjs ./deploy/compose/init.mjs
USER 65532
ENTRYPOINT ["/nodejs/bin/node", "packages/cli/bin/kubetunnel.js"]
