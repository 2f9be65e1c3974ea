# The operator image: a static-ish Rust binary on distroless, non-root.
# The time zone database is compiled in; TLS roots for the API server come
# from the ServiceAccount, so the runtime image needs nothing else.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin credit-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/credit-operator /usr/local/bin/credit-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/credit-operator"]
CMD ["run"]
