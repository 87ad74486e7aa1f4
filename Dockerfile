# kubetunnel: one image for the server and the agent.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.base.json ./
COPY packages ./packages
COPY bench ./bench
COPY examples ./examples
RUN npm ci --no-audit --no-fund && npm run build && npm prune --omit=dev

FROM gcr.io/distroless/nodejs20-debian12:nonroot
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/packages ./packages
COPY --from=build /src/package.json ./package.json
USER 65532
ENTRYPOINT ["/nodejs/bin/node", "packages/cli/bin/kubetunnel.js"]
