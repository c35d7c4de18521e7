package cbtest

import (
	"encoding/json"
	"strconv"
)

// Cluster configs (CCCP and HTTP): one server-wide rev shared by the
// global config and every bucket config, revEpoch 1, hostname
// 127.0.0.1, one nodesExt and nodes entry per node in node order, no
// replicas.

const clusterUUID = "c5b79e83c9f84c5ea0a3e5b1cbtest00"

func (s *Server) nodesExtLocked(thisNode int) []map[string]any {
	var out []map[string]any
	for _, n := range s.nodes {
		e := map[string]any{
			"hostname": "127.0.0.1",
			"services": s.servicesOf(n),
		}
		if n.idx == thisNode {
			e["thisNode"] = true
		}
		out = append(out, e)
	}
	return out
}

// servicesOf is a node's ports by service, under their TLS names with
// Options.TLS (§1.6).
func (s *Server) servicesOf(n *node) map[string]int {
	if s.opts.TLS != nil {
		return map[string]int{"kvSSL": n.kvPort, "mgmtSSL": n.mgmtPort, "n1qlSSL": n.n1qlPort}
	}
	return map[string]int{"kv": n.kvPort, "mgmt": n.mgmtPort, "n1ql": n.n1qlPort}
}

func (s *Server) clusterCaps() map[string]any {
	return map[string]any{
		"clusterCapabilitiesVer": []int{1, 0},
		"clusterCapabilities":    map[string][]string{"n1ql": {"enhancedPreparedStatements"}},
	}
}

// globalConfigLocked is the config of a connection with no bucket
// selected (GCCCP): no uuid, nodeLocator or vBucketServerMap.
func (s *Server) globalConfigLocked(thisNode int) []byte {
	cfg := map[string]any{
		"rev":      s.rev,
		"revEpoch": 1,
		"nodesExt": s.nodesExtLocked(thisNode),
	}
	for k, v := range s.clusterCaps() {
		cfg[k] = v
	}
	b, _ := json.Marshal(cfg)
	return b
}

// bucketConfigMapLocked is the terse bucket config.
func (s *Server) bucketConfigMapLocked(b *bucket, thisNode int) map[string]any {
	var nodes []map[string]any
	var servers []string
	for _, n := range s.nodes {
		nodes = append(nodes, map[string]any{
			"hostname": "127.0.0.1:" + strconv.Itoa(n.mgmtPort),
			"ports":    map[string]int{"direct": n.kvPort},
		})
		servers = append(servers, "127.0.0.1:"+strconv.Itoa(n.kvPort))
	}
	vbmap := make([][]int, len(b.vbs))
	for i := range vbmap {
		vbmap[i] = []int{s.vbNode(uint16(i))}
	}
	cfg := map[string]any{
		"rev":                    s.rev,
		"revEpoch":               1,
		"name":                   b.name,
		"uuid":                   b.uuid,
		"nodeLocator":            "vbucket",
		"uri":                    "/pools/default/buckets/" + b.name + "?bucket_uuid=" + b.uuid,
		"streamingUri":           "/pools/default/bucketsStreaming/" + b.name + "?bucket_uuid=" + b.uuid,
		"bucketCapabilitiesVer":  "",
		"bucketCapabilities":     []string{"collections", "dcp", "cccp", "nodesExt", "cbhello", "touch", "xattr", "durableWrite"},
		"collectionsManifestUid": hexUID(b.man.uid),
		"ddocs":                  map[string]string{"uri": "/pools/default/buckets/" + b.name + "/ddocs"},
		"nodes":                  nodes,
		"nodesExt":               s.nodesExtLocked(thisNode),
		"vBucketServerMap": map[string]any{
			"hashAlgorithm": "CRC",
			"numReplicas":   0,
			"serverList":    servers,
			"vBucketMap":    vbmap,
		},
	}
	for k, v := range s.clusterCaps() {
		cfg[k] = v
	}
	return cfg
}

func (s *Server) bucketConfigLocked(b *bucket, thisNode int) []byte {
	out, _ := json.Marshal(s.bucketConfigMapLocked(b, thisNode))
	return out
}
