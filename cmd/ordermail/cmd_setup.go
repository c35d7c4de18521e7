package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func setupCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("setup", stderr)
	var sc app.StoreConfig
	var so couchbase.SetupOptions
	var logs logFlags
	storeFlags(fs, &sc)
	fs.Uint64Var(&so.BucketRAMMB, "cb-bucket-ram", 256, "RAM quota in MB of the orders bucket, when setup creates it")
	fs.Uint64Var(&so.MetadataRAMMB, "cb-metadata-ram", 128, "RAM quota in MB of the metadata bucket, when setup creates it")
	var replicas uint
	fs.UintVar(&replicas, "cb-replicas", 0, "replicas of the buckets setup creates: 0 suits a one-node cluster; give 1 or more on a cluster of several data nodes, or losing one loses its share of the outcomes")
	fs.IntVar(&so.IndexReplicas, "cb-index-replicas", 0, "replicas of each index setup creates, each on another index node (Enterprise Edition): 1 or more on a cluster of several index nodes, or losing one stops the sweep; an index already there keeps its own")
	fs.DurationVar(&so.IndexWait, "cb-index-wait", time.Hour, "how long setup waits for its indexes to be built (minutes on a collection of millions); past it the cluster goes on building them and setup run again waits for them")
	logs.register(fs, "info")
	return &ffcli.Command{
		Name:       "setup",
		ShortUsage: "ordermail setup --store couchbase://HOST (--cb-username U | --cb-cert-file F --cb-key-file K) [flags]",
		ShortHelp:  "create the Couchbase buckets, collections and indexes (safe to run again)",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := sc.Validate(); err != nil {
				return badSetting(err)
			}
			if err := checkStoreFlags(sc); err != nil {
				return badSetting(err)
			}
			log, err := logs.logger(stderr)
			if err != nil {
				return badSetting(err)
			}
			if !sc.IsCouchbase() {
				fmt.Fprintln(stdout, "nothing to set up: the embedded store creates its file and tables when it opens")
				return nil
			}
			if so.IndexReplicas < 0 {
				return badSetting(fmt.Errorf("cb-index-replicas: %d is below 0", so.IndexReplicas))
			}
			if so.IndexWait <= 0 {
				return badSetting(fmt.Errorf("cb-index-wait: %s is not positive", so.IndexWait))
			}
			so.Replicas = uint32(replicas)
			if err := couchbase.Setup(ctx, sc.CouchbaseConfig(), so, log); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "setup complete: buckets, collections and indexes are in place")
			return nil
		},
	}
}
