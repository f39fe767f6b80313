# Sourced by scripts/test and scripts/demo: makes DATABASE_URL and AMQP_URL point at a
# running PostgreSQL and RabbitMQ, starting throwaway ones under $SCRATCH when the
# caller has none, and registers their teardown in `cleanup_services`.
#
#   REUSE_DEFAULT_SERVICES=1  also reuse servers on the default local ports.

THROWAWAY_PG=""
THROWAWAY_MQ=""

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ensure_services() {
    local root=$1
    if [ -z "${DATABASE_URL:-}" ] && [ "${REUSE_DEFAULT_SERVICES:-0}" = 1 ] && port_open 5432; then
        export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
    fi
    if [ -z "${DATABASE_URL:-}" ]; then
        THROWAWAY_PG="$SCRATCH/pg"
        echo "starting a throwaway PostgreSQL" >&2
        DATABASE_URL=$(bash "$root/tests/ground/postgres.sh" start "$THROWAWAY_PG")
        export DATABASE_URL
    fi
    if [ -z "${AMQP_URL:-}" ] && [ "${REUSE_DEFAULT_SERVICES:-0}" = 1 ] && port_open 5672; then
        export AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
    fi
    if [ -z "${AMQP_URL:-}" ]; then
        THROWAWAY_MQ="$SCRATCH/mq"
        echo "starting a throwaway RabbitMQ" >&2
        AMQP_URL=$(bash "$root/tests/ground/rabbitmq.sh" start "$THROWAWAY_MQ")
        export AMQP_URL
    fi
}

cleanup_services() {
    local root=$1
    if [ -n "$THROWAWAY_MQ" ]; then bash "$root/tests/ground/rabbitmq.sh" stop "$THROWAWAY_MQ" || true; fi
    if [ -n "$THROWAWAY_PG" ]; then bash "$root/tests/ground/postgres.sh" stop "$THROWAWAY_PG" || true; fi
}
