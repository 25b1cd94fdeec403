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
# fulcrum runs as the image's unprivileged `node` user. The VIP failover's two privileged steps
# are the only ones given privileges: `ip` holds CAP_NET_ADMIN and `arping` CAP_NET_RAW as file
# capabilities, which take effect when the container is started with --cap-add NET_ADMIN
# --cap-add NET_RAW (needed for ha only; without them those two commands cannot run).
FROM node:24-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 iputils-arping libcap2-bin \
    && setcap cap_net_admin+ep "$(readlink -f "$(command -v ip)")" \
    && setcap cap_net_raw+ep "$(readlink -f "$(command -v arping)")" \
    && apt-get purge -y libcap2-bin && rm -rf /var/lib/apt/lists/*
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
