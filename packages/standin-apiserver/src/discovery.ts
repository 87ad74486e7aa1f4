/** Version and legacy (non-aggregated) discovery documents, as kubectl expects them. */

export function versionInfo(cluster: string): object {
  return {
    major: '1',
    minor: '32',
    gitVersion: `v1.32.0-standin+${cluster}`,
    gitCommit: '0000000000000000000000000000000000000000',
    gitTreeState: 'clean',
    buildDate: '2024-12-11T00:00:00Z',
    goVersion: 'go1.23.0',
    compiler: 'gc',
    platform: 'linux/amd64',
    cluster,
  };
}

export function apiVersions(serverAddress: string): object {
  return {
    kind: 'APIVersions',
    versions: ['v1'],
    serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }],
  };
}

const AUTHN = 'authentication.k8s.io';

export function apiGroupList(): object {
  const version = { groupVersion: `${AUTHN}/v1`, version: 'v1' };
  return {
    kind: 'APIGroupList',
    apiVersion: 'v1',
    groups: [{ name: AUTHN, versions: [version], preferredVersion: version }],
  };
}

export function apiGroup(name: string): object | undefined {
  if (name !== AUTHN) return undefined;
  const version = { groupVersion: `${AUTHN}/v1`, version: 'v1' };
  return { kind: 'APIGroup', apiVersion: 'v1', name, versions: [version], preferredVersion: version };
}

const READ_WRITE = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];

export function coreV1Resources(): object {
  return {
    kind: 'APIResourceList',
    groupVersion: 'v1',
    resources: [
      {
        name: 'namespaces',
        singularName: 'namespace',
        namespaced: false,
        kind: 'Namespace',
        verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'],
        shortNames: ['ns'],
      },
      {
        name: 'pods',
        singularName: 'pod',
        namespaced: true,
        kind: 'Pod',
        verbs: READ_WRITE,
        shortNames: ['po'],
        categories: ['all'],
      },
      { name: 'pods/exec', singularName: '', namespaced: true, kind: 'PodExecOptions', verbs: ['create', 'get'] },
      { name: 'pods/log', singularName: '', namespaced: true, kind: 'Pod', verbs: ['get'] },
      {
        name: 'pods/portforward',
        singularName: '',
        namespaced: true,
        kind: 'PodPortForwardOptions',
        verbs: ['create', 'get'],
      },
    ],
  };
}

export function authenticationV1Resources(): object {
  return {
    kind: 'APIResourceList',
    apiVersion: 'v1',
    groupVersion: `${AUTHN}/v1`,
    resources: [
      {
        name: 'selfsubjectreviews',
        singularName: 'selfsubjectreview',
        namespaced: false,
        kind: 'SelfSubjectReview',
        verbs: ['create'],
      },
    ],
  };
}
