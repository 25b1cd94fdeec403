# syntax=docker/dockerfile:1
# Build: compile the WebAssembly engine and the native relay, and type-check the TypeScript.
FROM node:24-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY build ./build
COPY assembly ./assembly
COPY src ./src
# The image's own Node 24 runs the build (not `npm run`: with --ignore-scripts the pinned `node`
# package has no binary, and the image does not need a second Node).
# The relay is compiled against the image's own Node headers (/usr/local/include/node).
RUN node build/asc.ts && node build/relay.ts && test -f build/out/relay.node \
    && node node_modules/typescript/bin/tsc -p tsconfig.json --noEmit

# Runtime: Node 24 runs the TypeScript sources directly (type stripping); only production
# dependencies, the compiled engine and the relay are copied (the relay needs only libc). iproute2 and arping serve the VIP failover.
FROM node:24-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 iputils-arping \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY src ./src
COPY bin ./bin
COPY --from=build /app/build/out ./build/out
EXPOSE 9900
ENTRYPOINT ["node", "src/cli.ts"]
CMD ["run", "--config", "/etc/fulcrum/fulcrum.yaml"]
