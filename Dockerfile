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
# The context has no .git: `docker build --build-arg FULCRUM_COMMIT=$(git rev-parse --short=12 HEAD)`
# records the commit for `fulcrum --version` and fulcrum_build_info (build/version.ts).
ARG FULCRUM_COMMIT=
RUN node build/asc.ts && node build/relay.ts && test -f build/out/relay.node \
    && node node_modules/typescript/bin/tsc -p tsconfig.json --noEmit

# Runtime: Node 24 runs the TypeScript sources directly (type stripping); only production
# dependencies, the compiled engine and the relay are copied (the relay needs only libc). iproute2 and arping serve the VIP failover.
# fulcrum runs as the image's unprivileged `node` user. `ha` and `bgp` need CAP_NET_ADMIN (and
# `ha` CAP_NET_RAW) in `ip` and `arping`: a file capability on `ip` does not work (iproute2's ip
# drops its capabilities when started by a user other than root without CAP_NET_ADMIN
# inheritable), and Docker gives a non-root user no ambient capabilities. So for `ha`/`bgp` start
# the container as its root with only those added: `docker run --user root --cap-add NET_ADMIN
# --cap-add NET_RAW …` (the container's root holds what Docker grants and nothing more);
# fulcrum checks at start that it holds them (src/ops/capabilities.ts).
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
USER node
ENTRYPOINT ["node", "src/cli.ts"]
CMD ["run", "--config", "/etc/fulcrum/fulcrum.yaml"]
