# ordermail: a static binary (modernc.org/sqlite is pure Go) and the fixtures.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /ordermail ./cmd/ordermail

FROM gcr.io/distroless/static-debian12
COPY --from=build /ordermail /ordermail
COPY fixtures /fixtures
ENTRYPOINT ["/ordermail"]
