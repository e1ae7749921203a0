package oms.bench.kstreams;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The engine's reservation saga (minus review) as a Kafka Streams app, so the benchmark can put the engine next to
 * the idiomatic JVM way of doing the same job on the same broker.
 *
 * <p>Two hops, like the engine: orders (keyed by order) → saga → reserve commands keyed {@code tenant:sku} → one
 * writer per SKU (a store of available units) → line results keyed by order → saga decides ACCEPTED (every line
 * reserved) or REJECTED (any line refused; the reserved lines are released back to their SKU writers). Every state
 * change and every record sent commit together, so under exactly_once_v2 each order is decided once and no SKU is
 * oversold.
 *
 * <p>Options ({@code --name value}, else environment {@code KS_NAME}): bootstrap, prefix, app-id, guarantee
 * (exactly_once_v2 | at_least_once), threads (1), state-dir, and to override Kafka Streams' defaults: commit-ms,
 * linger-ms, cache-bytes, or any config by its own name ({@code --max.task.idle.ms -1}). Prints {@code READY} on stdout once RUNNING; SIGTERM closes the app.
 */
public final class ReservationPeer {
    static final ObjectMapper JSON = new ObjectMapper();

    static final String SAGAS = "sagas";
    static final String STOCK = "stock";
    static final String TO_RESERVE = "reserve-out";
    static final String TO_RESULTS = "results-out";
    static final String TO_DECISIONS = "decisions-out";

    /** Saga line states, kept in the saga's {@code res} array. */
    static final int PENDING = 0;
    static final int RESERVED = 1;
    static final int REFUSED = 2;

    private ReservationPeer() {}

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = parseArgs(args);
        String bootstrap = option(opts, "bootstrap", "127.0.0.1:9092");
        String prefix = required(opts, "prefix");
        String appId = option(opts, "app-id", prefix + ".app");
        String guarantee = option(opts, "guarantee", StreamsConfig.EXACTLY_ONCE_V2);
        if (!guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) && !guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            throw new IllegalArgumentException("guarantee must be exactly_once_v2 or at_least_once, not " + guarantee);
        }

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(option(opts, "threads", "1")));
        props.put(StreamsConfig.STATE_DIR_CONFIG, option(opts, "state-dir", System.getProperty("java.io.tmpdir")));
        // Unset means Kafka Streams' own defaults (commit 100 ms under EOS, 30 s otherwise; linger 100 ms; 10 MiB
        // cache): the peer should be the stock app, tuned only when a benchmark says so.
        putIfSet(props, StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, option(opts, "commit-ms", null));
        putIfSet(props, StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), option(opts, "linger-ms", null));
        putIfSet(props, StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, option(opts, "cache-bytes", null));
        // Any other option with a dot in its name is a Kafka Streams (or prefixed client) config, for experiments.
        opts.forEach((name, value) -> {
            if (name.contains(".")) {
                props.put(name, value);
            }
        });
        // Static membership only so that close(leaveGroup) really removes the members (Kafka Streams otherwise
        // stays in the group for a fast restart, and the driver could not delete the group after the run).
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG), appId + ".peer");

        createInternalTopics(bootstrap, prefix);
        KafkaStreams streams = new KafkaStreams(topology(prefix), props);

        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean ready = new AtomicBoolean();
        AtomicBoolean terminating = new AtomicBoolean();
        streams.setStateListener((now, before) -> {
            // RUNNING comes back after every rebalance; the driver wants to hear it once.
            if (now == KafkaStreams.State.RUNNING && ready.compareAndSet(false, true)) {
                System.out.println("READY");
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(error -> {
            // A broken invariant or a fenced producer: stop the whole app, a benchmark must not limp on.
            System.err.println("peer: stream thread failed: " + error);
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            terminating.set(true);
            // The run is over: leave the group, so the driver can delete it right after.
            streams.close(new KafkaStreams.CloseOptions().timeout(Duration.ofSeconds(30)).leaveGroup(true));
            stopped.countDown();
        }, "peer-shutdown"));

        streams.start();
        stopped.await();
        if (!terminating.get()) {
            // Stopped by an error, not by SIGTERM: exit non-zero so the driver reports it.
            streams.close(Duration.ofSeconds(10));
            System.exit(1);
        }
    }

    /** The topology: two sub-topologies joined by the reserve and results topics (the two hops). */
    static Topology topology(String prefix) {
        StringDeserializer in = new StringDeserializer();
        StringSerializer out = new StringSerializer();
        Topology t = new Topology();

        // Hop 1 side: orders and line results share the order key, so one task owns an order's whole saga.
        t.addSource("orders-in", in, in, prefix + ".orders");
        t.addSource("results-in", in, in, prefix + ".results");
        t.addProcessor("order", OrderProcessor::new, "orders-in");
        t.addProcessor("result", ResultProcessor::new, "results-in");
        // Caching coalesces a saga's several updates per commit into one changelog record.
        t.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(SAGAS), Serdes.String(), Serdes.String())
                        .withCachingEnabled(),
                "order",
                "result");
        t.addSink(TO_RESERVE, prefix + ".reserve", out, out, "order", "result");
        t.addSink(TO_DECISIONS, prefix + ".decisions", out, out, "order", "result");

        // Hop 2 side: every command for one tenant:sku lands on one partition, so one writer owns its stock.
        t.addSource("reserve-in", in, in, prefix + ".reserve");
        t.addSource("stock-in", in, in, prefix + ".stock");
        t.addProcessor("sku", SkuProcessor::new, "reserve-in");
        t.addProcessor("receive", ReceiveProcessor::new, "stock-in");
        t.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(STOCK), Serdes.String(), Serdes.Long())
                        .withCachingEnabled(),
                "sku",
                "receive");
        t.addSink(TO_RESULTS, prefix + ".results", out, out, "sku");
        return t;
    }

    /**
     * The two topics between the hops belong to the peer. They get the orders topic's partition count: reserve must
     * match stock (one SKU writer reads both) and results must match orders (one saga task reads both).
     */
    static void createInternalTopics(String bootstrap, String prefix) throws InterruptedException {
        Properties conf = new Properties();
        conf.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(conf)) {
            String orders = prefix + ".orders";
            int partitions = admin.describeTopics(List.of(orders)).allTopicNames().get().get(orders).partitions().size();
            for (String name : List.of(prefix + ".reserve", prefix + ".results")) {
                try {
                    admin.createTopics(List.of(new NewTopic(name, partitions, (short) -1))).all().get();
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) {
                        throw new IllegalStateException("cannot create " + name, e.getCause());
                    }
                }
            }
        } catch (ExecutionException e) {
            throw new IllegalStateException("cannot describe " + prefix + ".orders (the driver creates it)", e);
        }
    }

    /** A new order: remember it, then ask each line's SKU writer for its units. Repeats of a known order are dropped. */
    static final class OrderProcessor implements Processor<String, String, String, String> {
        private ProcessorContext<String, String> ctx;
        private KeyValueStore<String, String> sagas;

        @Override
        public void init(ProcessorContext<String, String> context) {
            ctx = context;
            sagas = context.getStateStore(SAGAS);
        }

        @Override
        public void process(Record<String, String> order) {
            String key = order.key();
            if (key == null || sagas.get(key) != null) {
                return; // a redelivery: the order is in flight or decided already
            }
            JsonNode value = parse(order.value());
            String tenant = value.get("tenant").asText();
            JsonNode lines = value.get("lines");
            if (lines.isEmpty()) {
                decide(ctx, sagas, order, key, true);
                return;
            }
            ObjectNode saga = JSON.createObjectNode();
            saga.put("tenant", tenant);
            saga.set("lines", lines);
            ArrayNode res = saga.putArray("res");
            for (int i = 0; i < lines.size(); i++) {
                res.add(PENDING);
            }
            sagas.put(key, saga.toString());
            for (int i = 0; i < lines.size(); i++) {
                JsonNode line = lines.get(i);
                String sku = tenant + ":" + line.get("sku").asText();
                ctx.forward(order.withKey(sku).withValue(command("reserve", key, i, line.get("qty").asLong())), TO_RESERVE);
            }
        }
    }

    /** A line's answer: record it; once every line has answered, decide and release what a rejection leaves held. */
    static final class ResultProcessor implements Processor<String, String, String, String> {
        private ProcessorContext<String, String> ctx;
        private KeyValueStore<String, String> sagas;

        @Override
        public void init(ProcessorContext<String, String> context) {
            ctx = context;
            sagas = context.getStateStore(SAGAS);
        }

        @Override
        public void process(Record<String, String> result) {
            String key = result.key();
            String stored = key == null ? null : sagas.get(key);
            if (stored == null) {
                return;
            }
            JsonNode saga = parse(stored);
            if (saga.has("status")) {
                return; // decided already; a repeated result under at_least_once
            }
            JsonNode value = parse(result.value());
            int line = value.get("line").asInt();
            ArrayNode res = (ArrayNode) saga.get("res");
            if (res.get(line).asInt() != PENDING) {
                return; // the same line answered twice (at_least_once replay): the first answer stands
            }
            res.set(line, value.get("ok").asBoolean() ? RESERVED : REFUSED);

            boolean accepted = true;
            for (JsonNode r : res) {
                if (r.asInt() == PENDING) {
                    sagas.put(key, saga.toString());
                    return;
                }
                accepted &= r.asInt() == RESERVED;
            }
            if (!accepted) {
                String tenant = saga.get("tenant").asText();
                JsonNode lines = saga.get("lines");
                for (int i = 0; i < res.size(); i++) {
                    if (res.get(i).asInt() == RESERVED) {
                        JsonNode l = lines.get(i);
                        String sku = tenant + ":" + l.get("sku").asText();
                        ctx.forward(result.withKey(sku).withValue(command("release", key, i, l.get("qty").asLong())),
                                TO_RESERVE);
                    }
                }
            }
            decide(ctx, sagas, result, key, accepted);
        }
    }

    /** The single writer of one tenant:sku's available units: reserve if enough is left, or add a release back. */
    static final class SkuProcessor implements Processor<String, String, String, String> {
        private ProcessorContext<String, String> ctx;
        private KeyValueStore<String, Long> stock;

        @Override
        public void init(ProcessorContext<String, String> context) {
            ctx = context;
            stock = context.getStateStore(STOCK);
        }

        @Override
        public void process(Record<String, String> command) {
            JsonNode value = parse(command.value());
            long qty = value.get("qty").asLong();
            Long stored = stock.get(command.key());
            long available = stored == null ? 0 : stored;
            if ("release".equals(value.get("op").asText())) {
                stock.put(command.key(), available + qty);
                return;
            }
            boolean ok = available >= qty;
            if (ok) {
                stock.put(command.key(), available - qty);
            }
            ObjectNode result = JSON.createObjectNode();
            String order = value.get("order").asText();
            result.put("order", order);
            result.put("line", value.get("line").asInt());
            result.put("ok", ok);
            ctx.forward(command.withKey(order).withValue(result.toString()), TO_RESULTS);
        }
    }

    /** Goods received: add them to the SKU's available units (the stock topic is keyed like the reserve topic). */
    static final class ReceiveProcessor implements Processor<String, String, String, String> {
        private KeyValueStore<String, Long> stock;

        @Override
        public void init(ProcessorContext<String, String> context) {
            stock = context.getStateStore(STOCK);
        }

        @Override
        public void process(Record<String, String> receive) {
            long qty = parse(receive.value()).get("qty").asLong();
            Long stored = stock.get(receive.key());
            stock.put(receive.key(), (stored == null ? 0 : stored) + qty);
        }
    }

    /** Mark the saga decided (the store then only remembers the outcome) and send the decision. */
    static void decide(
            ProcessorContext<String, String> ctx,
            KeyValueStore<String, String> sagas,
            Record<String, String> cause,
            String key,
            boolean accepted) {
        String status = accepted ? "ACCEPTED" : "REJECTED";
        sagas.put(key, JSON.createObjectNode().put("status", status).toString());
        ObjectNode decision = JSON.createObjectNode().put("order", key).put("status", status);
        ctx.forward(cause.withKey(key).withValue(decision.toString()), TO_DECISIONS);
    }

    static String command(String op, String order, int line, long qty) {
        return JSON.createObjectNode().put("op", op).put("order", order).put("line", line).put("qty", qty).toString();
    }

    static JsonNode parse(String json) {
        try {
            return JSON.readTree(json);
        } catch (JsonProcessingException e) {
            throw new UncheckedIOException("not JSON: " + json, e);
        }
    }

    static Map<String, String> parseArgs(String[] args) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                throw new IllegalArgumentException("expected --name value pairs, got " + String.join(" ", args));
            }
            opts.put(args[i].substring(2), args[++i]);
        }
        return opts;
    }

    static String option(Map<String, String> opts, String name, String fallback) {
        String value = opts.get(name);
        if (value == null) {
            value = System.getenv("KS_" + name.toUpperCase(Locale.ROOT).replace('-', '_'));
        }
        return value == null ? fallback : value;
    }

    static String required(Map<String, String> opts, String name) {
        String value = option(opts, name, null);
        if (value == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return value;
    }

    static void putIfSet(Properties props, String key, String value) {
        if (value != null) {
            props.put(key, value);
        }
    }
}
