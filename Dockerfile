# One image with both binaries, so the operator and the registry it deploys
# always come from the same build. Build with: docker build -t berth:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p berth-registry -p berth-operator \
 && install -D -m 0755 target/release/berth-registry /out/berth-registry \
 && install -D -m 0755 target/release/berth-operator /out/berth-operator

# glibc and libgcc only; no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 5000
ENTRYPOINT []
CMD ["berth-registry", "--listen", "0.0.0.0:5000", "--root", "/var/lib/berth"]
