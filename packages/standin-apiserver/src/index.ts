/**
 * A stand-in Kubernetes apiserver for the demo and the end-to-end tests: no
 * real kube-apiserver runs here, so this serves the slice of the API that
 * real kubectl needs (discovery, namespaces with watch, one echo pod with
 * exec, logs and port-forward, SelfSubjectReview, impersonation).
 */
export { startStandinApiserver } from './server.js';
export type { NamespaceMetadata } from './namespaces.js';
export type {
  Identity,
  RecordedRequest,
  StandinApiserver,
  StandinApiserverOptions,
  TokenUser,
} from './types.js';
