// Command floor is the reconcile benchmark's floor: the least a controller must do for an
// InferenceService, written the way the best Go operators are (controller-runtime, informer
// cache, server-side apply), so bench/bench_reconcile.py can report Inferator as a ratio to it.
//
// Per InferenceService it does exactly the unavoidable work: server-side apply of a
// Deployment and a Service (skipped when the cached child already carries the service's
// generation) and one status write when the status it would write differs from the cached
// one (observedGeneration, Ready, and Available from the Deployment). Every read comes from
// the informer cache. It selects no profile and renders nothing else: that is the point.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

const (
	fieldOwner    = "floor"
	generationKey = "floor.inferator.dev/generation"
)

var gvk = schema.GroupVersionKind{Group: "inferator.dev", Version: "v1alpha1", Kind: "InferenceService"}

type reconciler struct {
	client.Client
}

func newService() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(gvk)
	return u
}

func (r *reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	svc := newService()
	if err := r.Get(ctx, req.NamespacedName, svc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	generation := strconv.FormatInt(svc.GetGeneration(), 10)
	labels := map[string]string{"app.kubernetes.io/instance": req.Name, "app.kubernetes.io/managed-by": fieldOwner}
	owner := metav1ac.OwnerReference().WithAPIVersion(gvk.GroupVersion().String()).WithKind(gvk.Kind).
		WithName(svc.GetName()).WithUID(svc.GetUID()).WithController(true).WithBlockOwnerDeletion(true)
	annotations := map[string]string{generationKey: generation}

	deployment := &appsv1.Deployment{}
	err := r.Get(ctx, req.NamespacedName, deployment)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if err != nil || deployment.Annotations[generationKey] != generation {
		replicas, _, _ := unstructured.NestedInt64(svc.Object, "spec", "replicas")
		apply := appsv1ac.Deployment(req.Name, req.Namespace).WithLabels(labels).WithAnnotations(annotations).
			WithOwnerReferences(owner).
			WithSpec(appsv1ac.DeploymentSpec().WithReplicas(int32(replicas)).
				WithSelector(metav1ac.LabelSelector().WithMatchLabels(labels)).
				WithTemplate(corev1ac.PodTemplateSpec().WithLabels(labels).
					WithSpec(corev1ac.PodSpec().WithContainers(corev1ac.Container().
						WithName("server").WithImage("vllm/vllm-openai:v0.11.0").
						WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(8000))))))
		if err := r.Apply(ctx, apply, client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
			return ctrl.Result{}, err
		}
	}

	service := &corev1.Service{}
	err = r.Get(ctx, req.NamespacedName, service)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if err != nil || service.Annotations[generationKey] != generation {
		apply := corev1ac.Service(req.Name, req.Namespace).WithLabels(labels).WithAnnotations(annotations).
			WithOwnerReferences(owner).
			WithSpec(corev1ac.ServiceSpec().WithSelector(labels).WithPorts(corev1ac.ServicePort().
				WithName("http").WithPort(8000).WithTargetPort(intstr.FromString("http"))))
		if err := r.Apply(ctx, apply, client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
			return ctrl.Result{}, err
		}
	}

	available := "False"
	for _, c := range deployment.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue &&
			deployment.Status.ObservedGeneration == deployment.Generation {
			available = "True"
		}
	}
	desired := map[string]interface{}{
		"observedGeneration": svc.GetGeneration(),
		"phase":              "Ready",
		"conditions": []interface{}{
			map[string]interface{}{"type": "Ready", "status": "True", "reason": "Rendered"},
			map[string]interface{}{"type": "Available", "status": available, "reason": "Deployment"},
		},
	}
	current, _, _ := unstructured.NestedMap(svc.Object, "status")
	if equality.Semantic.DeepEqual(withoutTimes(current), desired) {
		return ctrl.Result{}, nil
	}
	patched := svc.DeepCopy()
	now := metav1.Now().UTC().Format("2006-01-02T15:04:05Z")
	for _, c := range desired["conditions"].([]interface{}) {
		c.(map[string]interface{})["lastTransitionTime"] = now
	}
	if err := unstructured.SetNestedField(patched.Object, desired, "status"); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.Status().Patch(ctx, patched, client.MergeFrom(svc))
}

// withoutTimes drops lastTransitionTime so a settled status compares equal to the desired one.
func withoutTimes(status map[string]interface{}) map[string]interface{} {
	if status == nil {
		return nil
	}
	out := map[string]interface{}{}
	for k, v := range status {
		out[k] = v
	}
	if conditions, ok := status["conditions"].([]interface{}); ok {
		trimmed := make([]interface{}, 0, len(conditions))
		for _, c := range conditions {
			m, ok := c.(map[string]interface{})
			if !ok {
				continue
			}
			copied := map[string]interface{}{}
			for k, v := range m {
				if k != "lastTransitionTime" {
					copied[k] = v
				}
			}
			trimmed = append(trimmed, copied)
		}
		out["conditions"] = trimmed
	}
	return out
}

func main() {
	namespace := flag.String("namespace", "bench-floor", "the only namespace watched")
	workers := flag.Int("workers", 32, "concurrent reconciles (Inferator's handler threads)")
	flag.Parse()
	ctrl.SetLogger(logr.Discard()) // errors come back as requeues; the benchmark reads the audit log
	cfg := ctrl.GetConfigOrDie()
	cfg.UserAgent = "floor/controller-runtime"
	// The same client-side rate limit as Inferator's client (none): the API server is the limit.
	cfg.QPS, cfg.Burst = -1, -1
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Cache:   cache.Options{DefaultNamespaces: map[string]cache.Config{*namespace: {}}},
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	err = ctrl.NewControllerManagedBy(mgr).
		For(newService()).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: *workers}).
		Complete(&reconciler{Client: mgr.GetClient()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}
