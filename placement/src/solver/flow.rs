//! Maximum flow with real-valued capacities (Dinic), for routing demand to replicas.
//!
//! Routing for a fixed placement is a bipartite transport problem per model: demand
//! entries on one side, sites with that model's capacity on the other. Dinic on floats
//! is exact up to `EPS`: every augmentation saturates an edge exactly (the bottleneck
//! residual minus itself is 0.0), and residuals below `EPS` count as saturated so
//! rounding crumbs never start another phase.

/// Residuals below this (requests per second) are treated as zero.
pub const EPS: f64 = 1e-9;

#[derive(Debug, Clone)]
struct Edge {
    to: usize,
    cap: f64,
}

/// A flow network. Edges come in pairs: `2i` forward, `2i + 1` its reverse.
#[derive(Debug, Clone, Default)]
pub struct FlowGraph {
    edges: Vec<Edge>,
    adj: Vec<Vec<usize>>,
}

impl FlowGraph {
    pub fn new(nodes: usize) -> Self {
        Self {
            edges: Vec::new(),
            adj: vec![Vec::new(); nodes],
        }
    }

    /// Adds an edge and returns its id for [`FlowGraph::flow`].
    pub fn add_edge(&mut self, from: usize, to: usize, cap: f64) -> usize {
        let id = self.edges.len() / 2;
        self.adj[from].push(self.edges.len());
        self.edges.push(Edge { to, cap });
        self.adj[to].push(self.edges.len());
        self.edges.push(Edge { to: from, cap: 0.0 });
        id
    }

    /// Flow on edge `id` after [`FlowGraph::max_flow`].
    pub fn flow(&self, id: usize) -> f64 {
        // The reverse edge starts empty and holds exactly what was pushed forward, which
        // stays meaningful on infinite edges where `initial - residual` would be NaN.
        self.edges[2 * id + 1].cap.max(0.0)
    }

    /// Pushes the maximum flow from `source` to `sink` and returns its value.
    pub fn max_flow(&mut self, source: usize, sink: usize) -> f64 {
        let n = self.adj.len();
        let mut total = 0.0;
        let mut level = vec![usize::MAX; n];
        let mut next = vec![0usize; n];
        let mut queue = Vec::with_capacity(n);
        loop {
            level.iter_mut().for_each(|l| *l = usize::MAX);
            level[source] = 0;
            queue.clear();
            queue.push(source);
            let mut head = 0;
            while head < queue.len() {
                let v = queue[head];
                head += 1;
                for &e in &self.adj[v] {
                    let edge = &self.edges[e];
                    if edge.cap > EPS && level[edge.to] == usize::MAX {
                        level[edge.to] = level[v] + 1;
                        queue.push(edge.to);
                    }
                }
            }
            if level[sink] == usize::MAX {
                return total;
            }
            next.iter_mut().for_each(|i| *i = 0);
            loop {
                let pushed = self.augment(source, sink, &level, &mut next);
                if pushed <= EPS {
                    break;
                }
                total += pushed;
            }
        }
    }

    /// One augmenting path in the level graph (iterative, so deep graphs cannot
    /// overflow the stack). Returns the amount pushed, 0 when none is left.
    fn augment(&mut self, source: usize, sink: usize, level: &[usize], next: &mut [usize]) -> f64 {
        let mut path: Vec<usize> = Vec::new();
        let mut v = source;
        loop {
            if v == sink {
                let amount = path
                    .iter()
                    .map(|&e| self.edges[e].cap)
                    .fold(f64::INFINITY, f64::min);
                for &e in &path {
                    self.edges[e].cap -= amount;
                    self.edges[e ^ 1].cap += amount;
                }
                return amount;
            }
            let mut advanced = false;
            while next[v] < self.adj[v].len() {
                let e = self.adj[v][next[v]];
                let edge = &self.edges[e];
                if edge.cap > EPS && level[edge.to] == level[v] + 1 {
                    path.push(e);
                    v = edge.to;
                    advanced = true;
                    break;
                }
                next[v] += 1;
            }
            if !advanced {
                // Dead end: never enter `v` again in this phase, step back.
                if v == source {
                    return 0.0;
                }
                let Some(e) = path.pop() else { return 0.0 };
                v = self.edges[e ^ 1].to;
                next[v] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bipartite_routing_finds_the_rerouted_optimum() {
        // Entry a (5 rps) sees sites x and y, entry b (5 rps) sees only x; each site
        // holds 5. A greedy that sends a to x strands b; the max flow sends a to y.
        let (src, a, b, x, y, sink) = (0, 1, 2, 3, 4, 5);
        let mut g = FlowGraph::new(6);
        g.add_edge(src, a, 5.0);
        g.add_edge(src, b, 5.0);
        let ax = g.add_edge(a, x, f64::INFINITY);
        let ay = g.add_edge(a, y, f64::INFINITY);
        let bx = g.add_edge(b, x, f64::INFINITY);
        g.add_edge(x, sink, 5.0);
        g.add_edge(y, sink, 5.0);
        assert!((g.max_flow(src, sink) - 10.0).abs() < 1e-12);
        assert!((g.flow(ay) - 5.0).abs() < 1e-12);
        assert!((g.flow(bx) - 5.0).abs() < 1e-12);
        assert!(g.flow(ax).abs() < 1e-12);
    }

    #[test]
    fn fractional_capacities_add_up() {
        let mut g = FlowGraph::new(4);
        g.add_edge(0, 1, 0.1);
        g.add_edge(0, 2, 0.2);
        g.add_edge(1, 3, 0.3);
        g.add_edge(2, 3, 0.05);
        let f = g.max_flow(0, 3);
        assert!((f - 0.15).abs() < 1e-12, "{f}");
    }
}
