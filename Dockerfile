# syntax=docker/dockerfile:1
# The weixin-robot image: the static musl binary on an empty base.
#
# Build the binaries first (packaging/build-static.sh, or cross), stage them with
# packaging/build-images.sh --stage-only, then for both platforms:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t llody/weixin-robot:v1 .
#   docker buildx build --platform linux/amd64 -t llody/weixin-robot:v1-amd64 --load .
#
# Without a Docker engine, packaging/build-images.sh builds the same images with umoci.
FROM scratch
ARG TARGETARCH
ARG VERSION=1.0.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="weixin-robot" \
      org.opencontainers.image.description="Relay Prometheus Alertmanager webhooks to WeCom group robots" \
      org.opencontainers.image.source="https://github.com/llody/weixin-robot" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY dist/image/${TARGETARCH}/weixin-robot /weixin-robot
# The outbox spool; mount a volume here to keep it across container restarts.
COPY --chown=65532:65532 dist/image/state/ /var/lib/weixin-robot/
ENV WEIXIN_ROBOT_STATE_DIR=/var/lib/weixin-robot
USER 65532:65532
EXPOSE 6000
HEALTHCHECK --interval=30s --timeout=3s CMD ["/weixin-robot", "healthcheck"]
ENTRYPOINT ["/weixin-robot"]
