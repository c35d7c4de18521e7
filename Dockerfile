# ordermail: a static binary (modernc.org/sqlite is pure Go) and the fixtures,
# on distroless as its non-root user (65532). .dockerignore keeps stores,
# secrets and the local binary out of the build context.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .dockerignore keeps .git out, so the build has no VCS stamp: the commit
# comes from a build argument (compose passes ORDERMAIL_REVISION), shown by
# `ordermail version` and ordermail_build_info.
ARG REVISION=""
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags "-X github.com/ordermail/ordermail/internal/buildinfo.revision=${REVISION}" \
    -o /ordermail ./cmd/ordermail
# The embedded store's directory, private to the user that runs ordermail.
RUN mkdir -m 0700 /data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ordermail /ordermail
COPY fixtures /fixtures
USER 65532:65532
# The default store, file:data/ordermail.db, lands in the user's home, in a
# volume: kept when the container is made again. A named volume mounted
# there starts as this directory is (owned by 65532, mode 0700); a host
# directory bound there must be writable by uid 65532.
WORKDIR /home/nonroot
COPY --from=build --chown=65532:65532 /data /home/nonroot/data
VOLUME /home/nonroot/data
# Metrics and health on every address of the container (published only as
# the operator chooses), so that the health check below has an endpoint to
# ask: `run` serves none unless told.
ENV ORDERMAIL_METRICS_LISTEN=0.0.0.0:9464
# No shell or curl here: ordermail GETs the health endpoint itself, on the
# port of ORDERMAIL_METRICS_LISTEN (exit 0 on a 2xx answer).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/ordermail", "healthcheck"]
ENTRYPOINT ["/ordermail"]
