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

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ordermail /ordermail
COPY fixtures /fixtures
USER 65532:65532
# The default store, file:data/ordermail.db, lands in the user's home.
WORKDIR /home/nonroot
# No shell or curl here: ordermail GETs the health endpoint itself, which
# `run --metrics-listen 0.0.0.0:9464` serves (exit 0 on a 2xx answer); with
# ORDERMAIL_METRICS_LISTEN set, it asks that port instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/ordermail", "healthcheck"]
ENTRYPOINT ["/ordermail"]
